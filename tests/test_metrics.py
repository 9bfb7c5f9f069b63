"""Metrics: hand-computed SDE parts, success/retention/accuracy/PSNR, and MIG/DCI/SAP sanity checks."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from explore import metrics as M
from explore.errors import InputError

# ---------------------------------------------------------------------------------------------
# SDE, computed by hand
# ---------------------------------------------------------------------------------------------


def _tiny():
    """2x2 RGB images; see the comments in test_sde_by_hand for every number."""
    x = np.zeros((2, 2, 3))
    x[0, 0] = 1.0  # white pixel top-left, the rest black
    x_rec = x.copy()
    x_rec[1, 1, 0] = 0.3  # reconstruction error: one channel off by 0.3
    x_edit = x_rec.copy()
    x_edit[0, 0] = (1.0, 0.0, 0.0)  # the object turns red: (0, -1, -1) inside the mask
    x_edit[0, 1, 2] = 0.5  # a leak: 0.5 in one channel outside the mask
    mask = np.zeros((2, 2), bool)
    mask[0, 0] = True
    return x, x_rec, x_edit, mask


def test_sde_by_hand():
    x, x_rec, x_edit, mask = _tiny()
    r = M.sde(x, x_rec, x_edit, score_rec=0.2, score_edit=0.9, mask=mask, attribute="color")
    # E = 0.9 - 0.2 = 0.7
    assert r.E == pytest.approx(0.7)
    # ‖x_edit - x_rec‖² = 1 + 1 (object) + 0.25 (leak) = 2.25; outside the mask: 0.25 -> leak = 1/9
    assert r.leak == pytest.approx(0.25 / 2.25, abs=1e-8)
    # mean(x) = 3 / 12 = 0.25; ‖x - mean‖² = 3 · 0.75² + 9 · 0.25² = 1.6875 + 0.5625 = 2.25
    # ‖x_rec - x‖² = 0.09 -> R = 0.09 / 2.25 = 0.04
    assert r.R == pytest.approx(0.04, abs=1e-8)
    # SDE = 0.7 · (8/9) · (1 - 0.04) = 0.597333...
    assert r.sde == pytest.approx(0.7 * 8 / 9 * 0.96, abs=1e-7)
    assert r["sde"] == r.sde and r.as_dict() == {"E": r.E, "leak": r.leak, "R": r.R, "sde": r.sde}


def test_sde_background_inverts_mask():
    x, x_rec, x_edit, mask = _tiny()
    r = M.sde(x, x_rec, x_edit, 0.2, 0.9, mask, attribute="background")
    # M = 1 - mask: now the object change (2.0 of 2.25) is outside M -> leak = 8/9
    assert r.leak == pytest.approx(2.0 / 2.25, abs=1e-8)
    assert r.sde == pytest.approx(0.7 * (1 / 9) * 0.96, abs=1e-7)


def test_sde_mask_union_and_uint8():
    x, x_rec, x_edit, mask = _tiny()
    other = np.zeros((2, 2), bool)
    other[0, 1] = True  # the leak pixel, now inside the union -> leak = 0
    r = M.sde(x, x_rec, x_edit, 0.2, 0.9, (mask, other))
    assert r.leak == pytest.approx(0.0, abs=1e-12)
    assert r.sde == pytest.approx(0.7 * 0.96, abs=1e-7)
    assert M.sde(x, x_rec, x_edit, 0.2, 0.9, np.stack([mask, other])).sde == pytest.approx(r.sde)
    assert M.sde(x, x_rec, x_edit, 0.2, 0.9, [mask, None]).leak == pytest.approx(1 / 9, abs=1e-8)
    u8 = M.sde(*(np.rint(a * 255).astype(np.uint8) for a in (x, x, x_edit)), 0.0, 1.0, mask)
    assert 0.0 <= u8.sde <= 1.0 and u8.R == 0.0


def test_sde_zero_cases():
    x, x_rec, x_edit, mask = _tiny()
    # E < 0 -> 0
    assert M.sde(x, x_rec, x_edit, 0.9, 0.2, mask).sde == 0.0
    assert M.sde(x, x_rec, x_edit, 0.9, 0.2, mask).E == pytest.approx(-0.7)
    # everything changes outside an empty mask -> leak = 1 -> 0
    full = M.sde(x, x_rec, x_edit, 0.0, 1.0, np.zeros((2, 2), bool))
    assert full.leak == pytest.approx(1.0) and full.sde == pytest.approx(0.0, abs=1e-8)
    # a reconstruction as far from x as x is from its mean -> R >= 1 -> 0
    bad_rec = 1.0 - x
    bad = M.sde(x, bad_rec, bad_rec, 0.0, 1.0, mask)
    assert bad.R >= 1.0 and bad.sde == 0.0
    # no edit at all: leak 0 (not NaN), E 0 -> 0
    same = M.sde(x, x_rec, x_rec, 0.5, 0.5, mask)
    assert same.leak == 0.0 and same.sde == 0.0
    # a perfect, local, full-effect edit -> 1
    assert M.sde(x, x, x_edit, 0.0, 1.0, (mask, np.ones((2, 2), bool))).sde == pytest.approx(1.0, abs=1e-7)


def test_sde_without_mask_is_nan_but_keeps_parts():
    x, x_rec, x_edit, _ = _tiny()
    r = M.sde(x, x_rec, x_edit, 0.2, 0.9, None)
    assert math.isnan(r.sde) and math.isnan(r.leak)
    assert r.E == pytest.approx(0.7) and r.R == pytest.approx(0.04)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(x=np.zeros((2, 2))), r"\(H, W, 3\)"),
        (dict(x_rec=np.zeros((3, 2, 3))), "differ in shape"),
        (dict(x_edit=np.full((2, 2, 3), np.nan)), "NaN"),
        (dict(x_edit=np.full((2, 2, 3), 2.0)), r"outside \[0, 1\]"),
        (dict(score_edit=1.5), "probability"),
        (dict(score_rec=float("nan")), "probability"),
        (dict(mask=np.zeros((3, 3), bool)), "mask"),
        (dict(mask=np.full((2, 2), 0.5)), "boolean"),
    ],
)
def test_sde_validates(change, match):
    x, x_rec, x_edit, mask = _tiny()
    args = dict(x=x, x_rec=x_rec, x_edit=x_edit, score_rec=0.1, score_edit=0.9, mask=mask)
    args.update(change)
    with pytest.raises(InputError, match=match):
        M.sde(**args)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    size=st.integers(1, 6),
    s_rec=st.floats(0, 1),
    s_edit=st.floats(0, 1),
    background=st.booleans(),
)
def test_sde_bounds_property(seed, size, s_rec, s_edit, background):
    rng = np.random.default_rng(seed)
    x, x_rec, x_edit = (rng.random((size, size, 3)) for _ in range(3))
    if rng.random() < 0.3:
        x = np.full_like(x, rng.random())  # flat source: R's denominator is ~0
    r = M.sde(x, x_rec, x_edit, s_rec, s_edit, rng.random((size, size)) < 0.5, "background" if background else "color")
    assert 0.0 <= r.sde <= 1.0
    assert 0.0 <= r.leak <= 1.0
    assert -1.0 <= r.E <= 1.0 and r.R >= 0.0


# ---------------------------------------------------------------------------------------------
# success / retention / accuracy / psnr
# ---------------------------------------------------------------------------------------------


def test_success_retention_accuracy():
    src = {"shape": "circle", "color": "red", "size": "small", "background": "gray"}
    edit = {"shape": "circle", "color": "blue", "size": "large", "background": "gray"}
    assert M.success(edit, "color", "blue") == 1.0
    assert M.success(edit, "color", "green") == 0.0
    assert M.success({"color": None}, "color", "blue") == 0.0
    # non-target factors: shape kept, size changed, background kept -> 2/3
    assert M.retention(edit, src, "color") == pytest.approx(2 / 3)
    assert M.retention({"color": "red"}, {"color": "red"}, "color") == 1.0  # nothing else to keep
    # all four factors against the source: shape, background right -> 2/4
    assert M.accuracy(edit, src) == pytest.approx(0.5)
    assert M.accuracy(src, src) == 1.0


def test_psnr():
    a = np.zeros((2, 2, 3))
    b = np.full((2, 2, 3), 0.1)
    # MSE = 0.01 -> 10 log10(1 / 0.01) = 20 dB
    assert M.psnr(a, b) == pytest.approx(20.0)
    assert M.psnr(a, a) == float("inf")
    with pytest.raises(ValueError, match="shape"):
        M.psnr(a, np.zeros((2, 3, 3)))


def test_mean_skips_missing():
    assert M.mean([1.0, None, float("nan"), 3.0]) == 2.0
    assert math.isnan(M.mean([]))


@settings(max_examples=40, deadline=None)
@given(
    labels=st.dictionaries(st.sampled_from("abcde"), st.sampled_from("xyz"), min_size=1),
    reading=st.dictionaries(st.sampled_from("abcde"), st.one_of(st.none(), st.sampled_from("xyz"))),
)
def test_retention_bounds_property(labels, reading):
    for attribute in list(labels) + ["zz"]:
        assert 0.0 <= M.retention(reading, labels, attribute) <= 1.0


# ---------------------------------------------------------------------------------------------
# MIG / DCI / SAP
# ---------------------------------------------------------------------------------------------

CARD = (3, 6, 2, 3, 3, 3)  # the ShapesWorld factor sizes


@pytest.fixture(scope="module")
def factors():
    rng = np.random.default_rng(0)
    return np.stack([rng.integers(0, c, 1000) for c in CARD], axis=1)


@pytest.fixture(scope="module")
def ordinal(factors):
    """A perfect code: each feature is one factor's integer code (as float), columns permuted."""
    perm = np.random.default_rng(1).permutation(len(CARD))
    return factors[:, perm].astype(np.float64)


@pytest.fixture(scope="module")
def noise(factors):
    return np.random.default_rng(2).normal(size=(len(factors), 20))


def test_mig_perfect_and_random(factors, ordinal, noise):
    # every value gets its own histogram bin: I(feature; factor) = H(factor), the rest ≈ 0
    assert M.mig(ordinal, factors) > 0.98
    assert M.mig(ordinal + 0.01 * np.random.default_rng(3).normal(size=ordinal.shape), factors) > 0.95
    assert M.mig(noise, factors) < 0.1


def test_mig_one_hot_is_low(factors):
    # MIG assumes one scalar per factor: a one-hot code splits a factor's information over columns
    onehot = np.concatenate([np.eye(c)[factors[:, k]] for k, c in enumerate(CARD)], axis=1)
    assert M.mig(onehot, factors) < 0.1
    # but DCI credits it as disentangled (each column predicts one factor only), and not complete
    d = M.dci(onehot, factors)
    assert d["disentanglement"] > 0.9 and d["completeness"] < 0.8


def test_mutual_information_matrix(factors, ordinal):
    mi = M.mutual_information(ordinal, factors)
    assert mi.shape == (len(CARD), len(CARD))
    # each factor's own column carries its full entropy, ln(card) for uniform codes (approximately)
    assert np.allclose(np.sort(mi.max(axis=0)), np.sort(np.log(CARD)), atol=0.02)


def test_dci_perfect_and_random(factors, ordinal, noise):
    perfect = M.dci(ordinal, factors)
    assert perfect["disentanglement"] > 0.95
    assert perfect["completeness"] > 0.95
    assert perfect["informativeness"] > 0.99
    assert perfect["importance"].shape == (len(CARD), len(CARD))
    # the perfect code plus 14 noise features: still disentangled, still informative
    padded = M.dci(np.concatenate([ordinal, noise[:, :14]], axis=1), factors)
    assert padded["disentanglement"] > 0.9 and padded["informativeness"] > 0.99
    rand = M.dci(noise, factors)
    assert rand["disentanglement"] < 0.1 and rand["completeness"] < 0.1
    # chance accuracy averaged over the factor sizes is ≈ mean(1 / CARD) = 0.33
    assert rand["informativeness"] < 0.45
    lin = M.dci(ordinal, factors, model="logistic")
    assert lin["disentanglement"] > 0.85 and lin["informativeness"] > 0.95


def test_dci_fast_enough(factors, noise):
    import time

    # the extra-trees variant (the earlier default; the gradient-boosted default is several times slower)
    M.dci(noise[:50], factors[:50], model="forest")  # imports and warm-up
    t = time.perf_counter()
    M.dci(noise, factors, model="forest")  # N = 1000, D = 20, K = 6, the slowest case (trees grow deep on noise)
    assert time.perf_counter() - t < 4.0  # < 2 s on an idle core; slack for a loaded machine


def test_sap_perfect_and_random(factors, ordinal, noise):
    # the 1-D tree, chance-adjusted variant (the earlier default; tests/test_disentanglement.py pins the
    # disentanglement_lib default, whose linear read-out scores a perfect ordinal code well below 1)
    assert M.sap(ordinal, factors, model="tree") > 0.95
    assert M.sap(noise, factors, model="tree") < 0.1
    s = M.sap_scores(ordinal, factors, model="tree")
    assert s.shape == (len(CARD), len(CARD)) and ((s >= 0) & (s <= 1)).all()


def test_per_factor_scores_average_to_the_overall_ones(factors, ordinal, noise):
    """Per-factor MIG / SAP / DCI-C: high for the factors a code carries, ≈ 0 for those it does not."""
    half = np.concatenate([ordinal[:, :3], noise[:, :3]], axis=1)  # carries 3 of the 6 factors
    carried = np.sort(np.random.default_rng(1).permutation(len(CARD))[:3])
    mk, sk = M.mig_per_factor(half, factors), M.sap_per_factor(half, factors, model="tree")  # SAP: the tree variant
    assert mk.shape == sk.shape == (len(CARD),)
    assert np.isclose(mk.mean(), M.mig(half, factors)) and np.isclose(sk.mean(), M.sap(half, factors, model="tree"))
    others = np.setdiff1d(np.arange(len(CARD)), carried)
    assert (mk[carried] > 0.9).all() and (mk[others] < 0.1).all()
    assert (sk[carried] > 0.85).all() and (sk[others] < 0.1).all()
    d = M.dci(half, factors)
    assert d["completeness_per_factor"].shape == (len(CARD),)
    assert (d["completeness_per_factor"][carried] > 0.8).all()
    assert (d["informativeness_per_factor"][carried] > 0.99).all()


def test_metrics_validate_inputs(factors, ordinal):
    with pytest.raises(InputError, match="rows"):
        M.mig(ordinal[:10], factors[:11])
    with pytest.raises(InputError, match="NaN"):
        M.dci(np.full((10, 2), np.nan), factors[:10])
    with pytest.raises(InputError, match="integer"):
        M.sap(ordinal[:10], factors[:10] + 0.5)
    with pytest.raises(InputError, match="single value"):
        M.mig(ordinal[:10], np.zeros((10, 1), int))
    with pytest.raises(InputError, match="2-D"):
        M.mig(ordinal[:, 0], factors)


def test_encode_factors():
    labels = [
        {"shape": "circle", "color": "red"},
        {"shape": "square", "color": "blue"},
        {"shape": "circle", "color": "blue"},
    ]
    codes, names = M.encode_factors(labels)
    assert names == {"shape": ["circle", "square"], "color": ["blue", "red"]}
    assert codes.tolist() == [[0, 1], [1, 0], [0, 0]]
    codes, names = M.encode_factors(labels, keys=["color"], values={"color": ["red", "blue"]})
    assert codes.tolist() == [[0], [1], [1]] and names == {"color": ["red", "blue"]}
    with pytest.raises(InputError, match="not one of"):
        M.encode_factors(labels, values={"color": ["red"]})
    with pytest.raises(InputError, match="no value"):
        M.encode_factors(labels + [{"shape": "circle"}])


def test_encode_factors_shapes_world():
    from explore.shapes.world import FACTORS, dataset

    scenes, _, _ = dataset(30, seed=0)
    codes, names = M.encode_factors([s.labels for s in scenes], values=FACTORS)
    assert codes.shape == (30, len(FACTORS)) and list(names) == list(FACTORS)
    assert all(names[k][codes[i, j]] == scenes[i].labels[k] for i in range(30) for j, k in enumerate(names))


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(20, 80), d=st.integers(2, 5), k=st.integers(1, 3))
def test_mig_sap_permutation_invariant(seed, n, d, k):
    rng = np.random.default_rng(seed)
    y = np.stack([rng.integers(0, rng.integers(2, 4), n) for _ in range(k)], axis=1)
    y[:2] = [[0] * k, [1] * k]  # every factor has at least two values
    f = rng.normal(size=(n, d))
    f[:, 0] += y[:, 0]  # some structure, so the scores are not all ≈ 0
    perm = rng.permutation(d)
    assert M.mig(f[:, perm], y) == pytest.approx(M.mig(f, y), abs=1e-12)
    assert M.sap(f[:, perm], y) == pytest.approx(M.sap(f, y), abs=1e-12)
    assert 0.0 <= M.mig(f, y) <= 1.0 and 0.0 <= M.sap(f, y) <= 1.0
