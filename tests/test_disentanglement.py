"""MIG / DCI / SAP at their defaults are disentanglement_lib's (Locatello et al. 2019) definitions.

``_dlib_*`` below is an independent transcription of disentanglement_lib's
``evaluation/metrics/{utils,mig,dci,sap_score}.py``, in its own layout (codes and factors as
``(num_codes, num_points)`` / ``(num_factors, num_points)`` arrays) and with its own estimators
(``GradientBoostingClassifier()``, ``LinearSVC(C=0.01, class_weight="balanced")``, ``mutual_info_score``,
``scipy.stats.entropy``). disentanglement_lib samples separate train and test sets; to compare like with
like the transcription is given the same per-factor train / test rows that ours uses
(`explore.stats.stratified_split`), one factor at a time (its per-factor loops are independent).
"""

import itertools

import numpy as np
import pytest
import scipy.stats
import sklearn.metrics
from sklearn import svm
from sklearn.ensemble import GradientBoostingClassifier

from explore.errors import InputError
from explore.evaluation import disentanglement as M
from explore.stats import stratified_split

# ---------------------------------------------------------------------------------------------
# the transcription (disentanglement_lib's code structure, (codes, points) layout)
# ---------------------------------------------------------------------------------------------


def _dlib_histogram_discretize(target, num_bins=20):
    discretized = np.zeros_like(target)
    for i in range(target.shape[0]):
        discretized[i, :] = np.digitize(target[i, :], np.histogram(target[i, :], num_bins)[1][:-1])
    return discretized


def _dlib_discrete_mutual_info(mus, ys):
    m = np.zeros([mus.shape[0], ys.shape[0]])
    for i in range(mus.shape[0]):
        for j in range(ys.shape[0]):
            m[i, j] = sklearn.metrics.mutual_info_score(ys[j, :], mus[i, :])
    return m


def _dlib_discrete_entropy(ys):
    return np.array([sklearn.metrics.mutual_info_score(ys[j, :], ys[j, :]) for j in range(ys.shape[0])])


def _dlib_mig(mus_train, ys_train):
    discretized_mus = _dlib_histogram_discretize(mus_train)
    m = _dlib_discrete_mutual_info(discretized_mus, ys_train)
    entropy = _dlib_discrete_entropy(ys_train)
    sorted_m = np.sort(m, axis=0)[::-1]
    return np.mean(np.divide(sorted_m[0, :] - sorted_m[1, :], entropy[:]))


def _dlib_compute_importance_gbt(x_train, y_train, x_test, y_test):
    num_factors, num_codes = y_train.shape[0], x_train.shape[0]
    importance_matrix = np.zeros(shape=[num_codes, num_factors], dtype=np.float64)
    train_loss, test_loss = [], []
    for i in range(num_factors):
        model = GradientBoostingClassifier()
        model.fit(x_train.T, y_train[i, :])
        importance_matrix[:, i] = np.abs(model.feature_importances_)
        train_loss.append(np.mean(model.predict(x_train.T) == y_train[i, :]))
        test_loss.append(np.mean(model.predict(x_test.T) == y_test[i, :]))
    return importance_matrix, np.mean(train_loss), np.mean(test_loss)


def _dlib_disentanglement(importance_matrix):
    per_code = 1.0 - scipy.stats.entropy(importance_matrix.T + 1e-11, base=importance_matrix.shape[1])
    if importance_matrix.sum() == 0.0:
        importance_matrix = np.ones_like(importance_matrix)
    code_importance = importance_matrix.sum(axis=1) / importance_matrix.sum()
    return np.sum(per_code * code_importance)


def _dlib_completeness(importance_matrix):
    per_factor = 1.0 - scipy.stats.entropy(importance_matrix + 1e-11, base=importance_matrix.shape[0])
    if importance_matrix.sum() == 0.0:
        importance_matrix = np.ones_like(importance_matrix)
    factor_importance = importance_matrix.sum(axis=0) / importance_matrix.sum()
    return np.sum(per_factor * factor_importance)


def _dlib_sap_score_matrix(mus, ys, mus_test, ys_test):
    """``_compute_score_matrix`` with ``continuous_factors=False``."""
    score_matrix = np.zeros([mus.shape[0], ys.shape[0]])
    for i in range(mus.shape[0]):
        for j in range(ys.shape[0]):
            classifier = svm.LinearSVC(C=0.01, class_weight="balanced")
            classifier.fit(mus[i, :][:, np.newaxis], ys[j, :])
            pred = classifier.predict(mus_test[i, :][:, np.newaxis])
            score_matrix[i, j] = np.mean(pred == ys_test[j, :])
    return score_matrix


def _dlib_avg_diff_top_two(matrix):
    sorted_matrix = np.sort(matrix, axis=0)
    return np.mean(sorted_matrix[-1, :] - sorted_matrix[-2, :])


def _reference(features, factors, test_size=0.25, random_state=0):
    """disentanglement_lib's MIG, DCI and SAP of ``features`` (N, D) vs ``factors`` (N, K), our splits."""
    mus, ys = features.T, factors.T  # disentanglement_lib's layout
    np.random.seed(0)  # its estimators draw (tie-breaking) from the global state
    importance = np.zeros((mus.shape[0], ys.shape[0]))
    train_acc, test_acc = [], []
    score_matrix = np.zeros((mus.shape[0], ys.shape[0]))
    for j in range(ys.shape[0]):
        train, test = stratified_split(factors[:, j], test_size, random_state)
        split = (mus[:, train], ys[j : j + 1, train], mus[:, test], ys[j : j + 1, test])
        imp, tr, te = _dlib_compute_importance_gbt(*split)
        importance[:, j] = imp[:, 0]
        train_acc.append(tr)
        test_acc.append(te)
        score_matrix[:, j] = _dlib_sap_score_matrix(*split)[:, 0]
    return {
        "mig": float(_dlib_mig(mus, ys)),
        "dci_d": float(_dlib_disentanglement(importance)),
        "dci_c": float(_dlib_completeness(importance)),
        "dci_i": float(np.mean(test_acc)),
        "dci_i_train": float(np.mean(train_acc)),
        "sap": float(_dlib_avg_diff_top_two(score_matrix)),
    }


def _ours(features, factors):
    d = M.dci(features, factors)
    return {
        "mig": M.mig(features, factors),
        "dci_d": d["disentanglement"],
        "dci_c": d["completeness"],
        "dci_i": d["informativeness"],
        "dci_i_train": d["informativeness_train"],
        "sap": M.sap(features, factors),
    }


# ---------------------------------------------------------------------------------------------
# synthetic codes: disentangled / rotated / random
# ---------------------------------------------------------------------------------------------

CARD = (3, 4, 2, 3)
N = 400


def synthetic(case: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(features (N, 5), factors (N, 4))``: each factor one code dimension plus small noise, and one
    pure-noise dimension ("disentangled"); a random rotation of that ("rotated"); pure noise ("random")."""
    rng = np.random.default_rng(seed)
    factors = np.stack([rng.integers(0, c, N) for c in CARD], axis=1)
    clean = np.concatenate([factors + 0.1 * rng.normal(size=factors.shape), rng.normal(size=(N, 1))], axis=1)
    if case == "disentangled":
        return clean, factors
    if case == "rotated":
        q, _ = np.linalg.qr(rng.normal(size=(clean.shape[1],) * 2))
        return clean @ q, factors
    if case == "random":
        return rng.normal(size=clean.shape), factors
    raise ValueError(case)


CASES = ("disentangled", "rotated", "random")
KEYS = ("mig", "dci_d", "dci_c", "dci_i", "dci_i_train", "sap")


def differences(case: str) -> dict[str, float]:
    """``|ours - disentanglement_lib's|`` per metric on one synthetic case."""
    f, y = synthetic(case)
    ours, ref = _ours(f, y), _reference(f, y)
    return {k: abs(ours[k] - ref[k]) for k in KEYS}


@pytest.mark.parametrize("case", CASES)
def test_defaults_agree_with_disentanglement_lib(case):
    diff = differences(case)
    assert max(diff.values()) <= 0.02, diff


def test_synthetic_cases_rank_as_expected():
    """Sanity of the synthetic codes themselves: disentangled > rotated > random on MIG, DCI-D and SAP."""
    s = {c: _ours(*synthetic(c)) for c in CASES}
    for k in ("mig", "dci_d", "sap"):
        assert s["disentangled"][k] > s["rotated"][k] > s["random"][k], k
    assert s["disentangled"]["mig"] > 0.8 and s["disentangled"]["dci_d"] > 0.9 and s["random"]["mig"] < 0.1


# ---------------------------------------------------------------------------------------------
# hand-checkable cases pinning each default
# ---------------------------------------------------------------------------------------------


def _grid(*cards: int, repeat: int) -> np.ndarray:
    """A full factorial design: every combination of the factor values ``repeat`` times, so distinct
    factors are exactly independent in the sample (their empirical mutual information is 0)."""
    return np.array(list(itertools.product(*(range(c) for c in cards))) * repeat)


def test_mig_by_hand():
    y = _grid(4, 2, repeat=12)
    # a perfect code: I(own dim; factor) = H(factor), I(other dim; factor) = 0 -> gap / H = 1
    assert M.mig_per_factor(y.astype(float), y) == pytest.approx([1.0, 1.0], abs=1e-12)
    # factor 0 (4 uniform values) seen only through y0 // 2: I = ln 2, H = ln 4 -> 0.5
    coarse = np.stack([y[:, 0] // 2, y[:, 1]], axis=1).astype(float)
    assert M.mig_per_factor(coarse, y) == pytest.approx([0.5, 1.0], abs=1e-12)
    # factor 0 duplicated in two dimensions: its top two mutual informations tie -> gap 0
    dup = np.stack([y[:, 0], y[:, 0], y[:, 1]], axis=1).astype(float)
    assert M.mig_per_factor(dup, y) == pytest.approx([0.0, 1.0], abs=1e-12)
    assert M.mig(dup, y) == pytest.approx(0.5, abs=1e-12)
    # the histogram bins are disentanglement_lib's (np.histogram edges, digitize against edges[:-1])
    x = np.random.default_rng(0).normal(size=(50, 3))
    ours = M._discretize(x, 20)
    ref = _dlib_histogram_discretize(x.T).T
    assert np.array_equal(ours, ref - 1)  # the same bins, numbered from 0 instead of 1


def test_sap_by_hand():
    # one balanced binary factor (96 rows: the stratified 24 held out are 12 / 12)
    y = _grid(2, repeat=48)
    x = y.astype(float)
    # a single dimension that is the factor: LinearSVC reads it perfectly, no second dimension -> 1
    assert M.sap(x, y) == pytest.approx(1.0)
    # the factor duplicated in two dimensions: both score 1 -> gap 0
    assert M.sap(np.concatenate([x, x], axis=1), y) == pytest.approx(0.0)
    # plus a constant dimension: it predicts one class, plain accuracy 1/2 (chance is not 0) -> 1 - 1/2
    s = M.sap_scores(np.concatenate([x, np.zeros_like(x)], axis=1), y)
    assert s[:, 0] == pytest.approx([1.0, 0.5])
    # two balanced binary factors, one dimension each: own dim 1, the other dim 1/2 -> SAP 1/2
    y2 = _grid(2, 2, repeat=24)
    s2 = M.sap_scores(y2.astype(float), y2)
    assert s2 == pytest.approx(np.array([[1.0, 0.5], [0.5, 1.0]]), abs=0.05)
    assert M.sap(y2.astype(float), y2) == pytest.approx(0.5, abs=0.05)
    # a linear one-vs-rest read-out of one scalar misses the middle value of a 3-valued ordinal code:
    # the perfect code scores 2/3 (the earlier "tree" variant scores it 1)
    y3 = _grid(3, repeat=40)
    assert M.sap_scores(y3.astype(float), y3)[0, 0] == pytest.approx(2 / 3)
    assert M.sap_scores(y3.astype(float), y3, model="tree")[0, 0] == pytest.approx(1.0)


def test_dci_by_hand():
    y = _grid(4, 2, 3, repeat=8)
    d = M.dci(y.astype(float), y)
    # a perfect code: each factor's trees use only its own dimension -> R = I, D = C = I = 1
    assert d["importance"] == pytest.approx(np.eye(3), abs=1e-9)
    assert d["disentanglement"] == pytest.approx(1.0, abs=1e-6)
    assert d["completeness"] == pytest.approx(1.0, abs=1e-6)
    assert d["informativeness"] == d["informativeness_train"] == 1.0
    assert d["completeness_per_factor"] == pytest.approx([1.0] * 3, abs=1e-6)
    # one dimension carrying two binary factors jointly (x = y0 + 2 y1): each factor's only
    # important feature is x, so R = [[1, 1]]: D = 1 - H_2(1/2, 1/2) = 0, C = 1 (D = 1), I = 1
    b = _grid(2, 2, repeat=24)
    joint = M.dci((b[:, 0] + 2 * b[:, 1])[:, None].astype(float), b)
    assert joint["importance"] == pytest.approx(np.ones((1, 2)))
    assert joint["disentanglement"] == pytest.approx(0.0, abs=1e-6)
    assert joint["completeness"] == pytest.approx(1.0) and joint["informativeness"] == 1.0
    # pure noise: no structure, held-out accuracy near chance (mean 1/card = 0.36)
    rng = np.random.default_rng(0)
    r = M.dci(rng.normal(size=(len(y), 3)), y)
    assert r["informativeness"] < 0.5 and r["informativeness_train"] > r["informativeness"]


# ---------------------------------------------------------------------------------------------
# the earlier variants, by name, with the numbers they gave as the defaults
# ---------------------------------------------------------------------------------------------

# computed with the earlier implementation (defaults dci(model="forest"), sap = the tree variant)
# on synthetic("rotated")
OLD = {
    "forest": [0.060191892394396325, 0.07580376964319724, 0.9425],  # D, C, I
    "logistic": [0.03570912858070258, 0.03499392374333339, 1.0],
    "tree": [0.1464912280701755, 0.1437606837606838, 0.05402160864345751, 0.2139276373147341],  # SAP per factor
}


def test_old_variants_by_name():
    f, y = synthetic("rotated")
    forest = M.dci(f, y, model="forest")
    logistic = M.dci(f, y, model="logistic")
    tree = M.sap_per_factor(f, y, model="tree")
    got = {
        "forest": [forest["disentanglement"], forest["completeness"], forest["informativeness"]],
        "logistic": [logistic["disentanglement"], logistic["completeness"], logistic["informativeness"]],
        "tree": list(tree),
    }
    for k, v in OLD.items():
        assert got[k] == pytest.approx(v, abs=1e-9), k
    assert M.sap(f, y, model="tree") == pytest.approx(np.mean(OLD["tree"]), abs=1e-9)


def test_unknown_variants_raise():
    f, y = synthetic("random")
    with pytest.raises(InputError, match="model"):
        M.dci(f, y, model="extra")
    with pytest.raises(InputError, match="model"):
        M.sap(f, y, model="logistic")
