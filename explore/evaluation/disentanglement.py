"""Ground-truth disentanglement metrics of a representation: MIG, DCI and SAP (DESIGN §3).

``features`` ``(N, D)`` (e.g. principal components of probe activations) against ``factors``
``(N, K)`` integer-coded labels (`encode_factors` turns label dicts into codes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.tree import DecisionTreeClassifier

from ..errors import InputError
from ..stats import check_split, stratified_split


def encode_factors(
    labels: Sequence[Mapping[str, Any]],
    keys: Sequence[str] | None = None,
    values: Mapping[str, Sequence[str]] | None = None,
) -> tuple[np.ndarray, dict[str, list[str]]]:
    """Integer-code label dicts for MIG / DCI / SAP.

    ``labels``: one ``factor -> value`` dict per sample (e.g. ``Scene.labels``). ``keys``: which
    factors, in which column order (default: the first dict's keys). ``values``: the value order per
    factor (default: sorted values seen); a value not listed raises.

    Returns ``(codes, names)``: ``codes`` ``(N, K)`` int64 with ``codes[n, k]`` the index of sample
    ``n``'s value in ``names[keys[k]]``; ``names`` ``factor -> [value, ...]`` in column order.
    """
    labels = list(labels)
    if not labels:
        raise InputError("no labels to encode")
    keys = list(keys if keys is not None else labels[0].keys())
    if not keys:
        raise InputError("no factor keys to encode")
    names: dict[str, list[str]] = {}
    for k in keys:
        for n, lab in enumerate(labels):
            if lab.get(k) is None:
                raise InputError(f"sample {n} has no value for factor {k!r}")
        if values is not None and k in values:
            names[k] = [str(v) for v in values[k]]
        else:
            names[k] = sorted({str(lab[k]) for lab in labels})
    codes = np.empty((len(labels), len(keys)), dtype=np.int64)
    for j, k in enumerate(keys):
        index = {v: i for i, v in enumerate(names[k])}
        for n, lab in enumerate(labels):
            v = str(lab[k])
            if v not in index:
                raise InputError(f"sample {n}: {k} = {v!r} is not one of {names[k]}")
            codes[n, j] = index[v]
    return codes, names


def _codes(features, factors, min_samples: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``(N, D)`` features and ``(N, K)`` discrete factors; factors recoded to 0..m-1 per column."""
    f = np.asarray(features)
    if f.ndim != 2:
        raise InputError(f"features must be a 2-D (N, D) array, got shape {f.shape}")
    if not (np.issubdtype(f.dtype, np.number) or f.dtype == bool):
        raise InputError(f"features must be numeric, got dtype {f.dtype}")
    f = f.astype(np.float64)
    if not np.isfinite(f).all():
        raise InputError("features have NaN or inf values")
    y = np.asarray(factors)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2:
        raise InputError(f"factors must be a 2-D (N, K) integer array, got shape {y.shape}")
    if len(y) != len(f):
        raise InputError(f"features have {len(f)} rows but factors have {len(y)}")
    if len(f) < min_samples:
        raise InputError(f"need at least {min_samples} samples, got {len(f)}")
    if f.shape[1] == 0 or y.shape[1] == 0:
        raise InputError(f"need at least one feature and one factor, got D={f.shape[1]}, K={y.shape[1]}")
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.isfinite(y).all() and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise InputError(
                f"factors must be integer-coded discrete labels (dtype {y.dtype} given); "
                "use explore.metrics.encode_factors for string labels"
            )
    coded = np.empty(y.shape, dtype=np.int64)
    for k in range(y.shape[1]):
        uniq, coded[:, k] = np.unique(y[:, k], return_inverse=True)
        if len(uniq) < 2:
            raise InputError(f"factor column {k} has a single value ({uniq[0]}); it carries no information, drop it")
    return f, coded


def _discretize(features: np.ndarray, n_bins: int) -> np.ndarray:
    """Each column into ``n_bins`` equal-width histogram bins over its own range (0..n_bins-1)."""
    out = np.empty(features.shape, dtype=np.int64)
    for j in range(features.shape[1]):
        edges = np.histogram_bin_edges(features[:, j], bins=n_bins)
        out[:, j] = np.digitize(features[:, j], edges[1:-1])
    return out


def _mutual_info(a: np.ndarray, b: np.ndarray) -> float:
    """Mutual information in nats of two integer label vectors (codes 0..)."""
    nb = int(b.max()) + 1
    joint = np.bincount(a * nb + b, minlength=(int(a.max()) + 1) * nb).reshape(-1, nb).astype(np.float64)
    joint /= joint.sum()
    pa = joint.sum(axis=1, keepdims=True)
    pb = joint.sum(axis=0, keepdims=True)
    nz = joint > 0
    return float(np.sum(joint[nz] * np.log(joint[nz] / (pa @ pb)[nz])))


def _entropy(a: np.ndarray) -> float:
    p = np.bincount(a).astype(np.float64)
    p = p[p > 0] / len(a)
    return float(-np.sum(p * np.log(p)))


def mutual_information(features, factors, n_bins: int = 20) -> np.ndarray:
    """``(D, K)`` mutual information (nats) between each histogram-discretised feature and each factor."""
    if int(n_bins) < 2:
        raise InputError(f"n_bins must be >= 2, got {n_bins}")
    f, y = _codes(features, factors)
    fd = _discretize(f, int(n_bins))
    return np.array([[_mutual_info(fd[:, i], y[:, k]) for k in range(y.shape[1])] for i in range(f.shape[1])])


def mig_per_factor(features, factors, n_bins: int = 20) -> np.ndarray:
    """``(K,)`` the normalised mutual-information gap of each factor (`mig` is their mean)."""
    mi = mutual_information(features, factors, n_bins)
    _, y = _codes(features, factors)
    top = -np.sort(-mi, axis=0)
    second = top[1] if mi.shape[0] > 1 else np.zeros(mi.shape[1])
    h = np.array([_entropy(y[:, k]) for k in range(y.shape[1])])
    return (top[0] - second) / h


def mig(features, factors, n_bins: int = 20) -> float:
    """Mutual Information Gap (Chen et al. 2018) in [0, 1].

    ``features`` ``(N, D)`` float, ``factors`` ``(N, K)`` integer-coded. Each feature is discretised
    into ``n_bins`` equal-width histogram bins; for each factor ``k``,
    ``(I(top feature; v_k) - I(second feature; v_k)) / H(v_k)``, averaged over factors. With a
    single feature the second mutual information counts as 0. Invariant to the order of the feature
    columns. Note: a one-hot code scores ≈ 0 (two indicator columns of one factor share its
    information); MIG assumes one scalar feature per factor.
    """
    return float(np.mean(mig_per_factor(features, factors, n_bins)))


def _norm_entropy(p: np.ndarray, axis: int) -> np.ndarray:
    """Entropy of distributions along ``axis``, in units of log(size of that axis) (so in [0, 1])."""
    size = p.shape[axis]
    if size < 2:
        return np.zeros(p.shape[1 - axis])
    q = p / np.maximum(p.sum(axis=axis, keepdims=True), 1e-300)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(q > 0, q * np.log(q), 0.0)
    return -terms.sum(axis=axis) / np.log(size)


def dci(
    features,
    factors,
    *,
    model: str = "forest",
    test_size: float = 0.25,
    random_state: int = 0,
    n_estimators: int = 30,
) -> dict[str, Any]:
    """DCI (Eastwood & Williams 2018): disentanglement, completeness and informativeness in [0, 1].

    One classifier per factor predicts it from all features (held-out ``test_size``, deterministic
    ``random_state``); its feature importances fill column ``k`` of the ``(D, K)`` importance matrix
    ``R``, normalised to sum 1 per factor so every factor weighs the same.

    ``model``:
      - ``"forest"`` (default): extremely randomised trees (``n_estimators``, impurity importances), the
        tree-ensemble flavour of the paper; non-linear, so ordinal or non-monotone codes count. Every
        split considers *every* feature (``max_features=None``): with random feature subsets (the
        random-forest default) splits land on irrelevant features whenever the relevant one was not
        drawn, and a perfect code scores only ≈ 0.75. Random thresholds make it ~2x faster than a
        random forest (N=1000, D=20, K=6: well under 1 s on one core); gradient boosting ranks the
        same but is several times slower.
      - ``"logistic"``: multinomial logistic regression on standardised features, importance = mean
        ``|coef|`` over classes — the paper's linear (lasso) flavour; fastest, but credits only what a
        linear read-out sees (a perfect ordinal code scores ≈ 0.93).

    Returns a dict: ``disentanglement`` = Σ_i ρ_i (1 - H_K(P_i·)) with ρ_i = code i's share of the total
    importance; ``completeness`` = mean_k (1 - H_D(P̃_·k)); ``informativeness`` = mean held-out
    accuracy; ``importance`` the ``(D, K)`` matrix. Entropies use log base K (resp. D); with K = 1
    (resp. D = 1) the score is 1 by definition.
    """
    if model not in ("forest", "logistic"):
        raise InputError(f"model must be 'forest' or 'logistic', got {model!r}")
    f, y = _codes(features, factors, min_samples=4)
    check_split(test_size, len(f))
    n, d = f.shape
    importance = np.zeros((d, y.shape[1]))
    accuracies = []
    for k in range(y.shape[1]):
        train, test = stratified_split(y[:, k], test_size, random_state)
        if len(np.unique(y[train, k])) < 2:  # a degenerate split: nothing to learn, no importance
            accuracies.append(float(np.mean(y[test, k] == y[train[0], k])))
            continue
        if model == "forest":
            from sklearn.ensemble import ExtraTreesClassifier

            clf = ExtraTreesClassifier(
                n_estimators=int(n_estimators),
                max_features=None,
                min_samples_leaf=2,
                random_state=random_state,
                n_jobs=1,
            )
            clf.fit(f[train], y[train, k])
            imp = clf.feature_importances_
            pred = clf.predict(f[test])
        else:
            from sklearn.linear_model import LogisticRegression

            mu, sd = f[train].mean(axis=0), f[train].std(axis=0)
            sd[sd == 0] = 1.0
            clf = LogisticRegression(max_iter=500, random_state=random_state)
            clf.fit((f[train] - mu) / sd, y[train, k])
            imp = np.abs(clf.coef_).mean(axis=0)
            pred = clf.predict((f[test] - mu) / sd)
        total = float(np.sum(imp))
        importance[:, k] = imp / total if total > 0 else 0.0
        accuracies.append(float(np.mean(pred == y[test, k])))

    total = importance.sum()
    comp_k = 1.0 - _norm_entropy(importance, axis=0) if total > 0 else np.zeros(y.shape[1])
    if total <= 0:  # nothing was predictive at all: no structure to credit
        dis = comp = 0.0
    else:
        rho = importance.sum(axis=1) / total
        dis = float(np.sum(rho * (1.0 - _norm_entropy(importance, axis=1))))
        weights = importance.sum(axis=0) / total
        comp = float(np.sum(weights * comp_k))
    return {
        "disentanglement": dis,
        "completeness": comp,
        "informativeness": float(np.mean(accuracies)),
        "importance": importance,
        "completeness_per_factor": np.asarray(comp_k, dtype=float),
        "informativeness_per_factor": np.asarray(accuracies, dtype=float),
    }


def _adjusted_balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Balanced accuracy rescaled so chance is 0 and perfect is 1, floored at 0 (classes present in y_true)."""
    classes = np.unique(y_true)
    if len(classes) < 2:
        return 0.0
    recall = np.mean([np.mean(y_pred[y_true == c] == c) for c in classes])
    chance = 1.0 / len(classes)
    return float(max((recall - chance) / (1.0 - chance), 0.0))


def sap_scores(features, factors, *, test_size: float = 0.25, random_state: int = 0) -> np.ndarray:
    """``(D, K)`` held-out predictability of each factor from each single feature (used by `sap`).

    A depth-limited decision tree on one feature with at most ``m_k`` leaves (``m_k`` = number of
    values of factor k), i.e. up to ``m_k`` intervals of the feature — the multi-class form of a
    threshold stump, which needs no linear or monotone relation. Score = balanced accuracy on the
    held-out split, chance-adjusted (``(bacc - 1/m) / (1 - 1/m)``, floored at 0), so chance is 0 and
    perfect is 1 for every number of classes.
    """
    f, y = _codes(features, factors, min_samples=4)
    check_split(test_size, len(f))
    n, d = f.shape
    scores = np.zeros((d, y.shape[1]))
    for k in range(y.shape[1]):
        train, test = stratified_split(y[:, k], test_size, random_state)
        m = len(np.unique(y[:, k]))
        for i in range(d):
            tree = DecisionTreeClassifier(max_leaf_nodes=max(m, 2), random_state=random_state)
            tree.fit(f[train, i : i + 1], y[train, k])
            scores[i, k] = _adjusted_balanced_accuracy(y[test, k], tree.predict(f[test, i : i + 1]))
    return scores


def sap(features, factors, *, test_size: float = 0.25, random_state: int = 0) -> float:
    """Separated Attribute Predictability (Kumar et al. 2018), discrete factors, in [0, 1].

    For each factor, the gap between the two features that predict it best on their own
    (`sap_scores`: chance-adjusted held-out balanced accuracy of a 1-D tree), averaged over factors.
    With a single feature the second score counts as 0. Invariant to the order of feature columns.
    """
    return float(np.mean(sap_per_factor(features, factors, test_size=test_size, random_state=random_state)))


def sap_per_factor(features, factors, *, test_size: float = 0.25, random_state: int = 0) -> np.ndarray:
    """``(K,)`` each factor's SAP gap (`sap` is their mean)."""
    s = sap_scores(features, factors, test_size=test_size, random_state=random_state)
    top = -np.sort(-s, axis=0)
    second = top[1] if s.shape[0] > 1 else np.zeros(s.shape[1])
    return top[0] - second
